"""A FastAPI app for bench_process.py: importing FastAPI (with pydantic) is most of a process-mode start."""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return "hello"
