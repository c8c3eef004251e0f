// The login page: posts the name and password as JSON, then goes to the
// dashboard. A refusal never says which of the two was wrong.
"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const button = document.getElementById("login-button");
  const error = document.getElementById("login-error");
  error.textContent = "";
  button.disabled = true;
  const send = () => fetch("/dashboard/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify({
      name: document.getElementById("name").value,
      password: document.getElementById("password").value,
    }),
  });
  try {
    let res;
    try {
      res = await send();
    } catch (_) {
      // A browser does not resend a POST whose connection was lost (a
      // kept-alive connection the hub had closed, a hub restarting): the
      // login is safe to send once more, and the hub's own limits count it.
      await new Promise((r) => setTimeout(r, 500));
      res = await send();
    }
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
