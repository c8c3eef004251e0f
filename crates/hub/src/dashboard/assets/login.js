// The login page: posts the name and password as JSON, then goes to the
// dashboard. A refusal never says which of the two was wrong.
"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const button = document.getElementById("login-button");
  const error = document.getElementById("login-error");
  error.textContent = "";
  button.disabled = true;
  try {
    const res = await fetch("/dashboard/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({
        name: document.getElementById("name").value,
        password: document.getElementById("password").value,
      }),
    });
    if (res.ok) {
      location.assign("/dashboard/");
      return;
    }
    let msg = "wrong name or password";
    try { msg = (await res.json()).error || msg; } catch (_) { /* keep */ }
    error.textContent = msg;
    document.getElementById("password").value = "";
  } catch (e) {
    error.textContent = "the hub did not answer: " + e;
  } finally {
    button.disabled = false;
  }
});
