// The console's login page: trade a console token for a session cookie, then load the page.
"use strict";

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const problem = document.getElementById("login-problem");
  problem.hidden = true;
  const response = await fetch("api/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: document.getElementById("login-token").value }),
  });
  if (response.ok) {
    location.reload();
    return;
  }
  let message = `${response.status} ${response.statusText}`;
  try {
    message = (await response.json()).error.message;
  } catch {
    // not our JSON: the status will do
  }
  problem.textContent = message;
  problem.hidden = false;
});
