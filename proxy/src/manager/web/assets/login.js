// Exchanges the login link's token (in the fragment: never sent to a server, never in
// a log) for a session cookie, then opens the interface.
"use strict";
(async () => {
  const status = document.getElementById("login-status");
  const token = location.hash.slice(1);
  // The token is spent either way: keep it out of the history.
  history.replaceState(null, "", "/login");
  if (!token) {
    status.textContent = "No login token in this link.";
    return;
  }
  const r = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
    credentials: "same-origin",
  });
  if (r.ok) {
    location.replace("/");
  } else {
    const body = await r.json().catch(() => ({}));
    status.textContent = "Login refused: " + (body.error || r.status);
    status.className = "error";
  }
})();
