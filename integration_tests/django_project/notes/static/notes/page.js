fetch("/notes/async/")
  .then((response) => response.json())
  .then((data) => {
    document.getElementById("notes").innerHTML = data.notes.map((text) => `<li>${text}</li>`).join("");
  });
