"""What the tests share, in one place (no tests and no fixtures here: the conftest.py files turn
these pieces into fixtures).

- waiting: free ports and waiting for a condition, a port or an HTTP answer (never a fixed sleep).
- processes: the product's processes (worker, scheduler, CLI) as subprocesses, and their environment.
- seed: the one seeder — tenants, users, servers, guests, credentials, sessions, operations rows.
- fleet: simulated PVE servers (fakepve) and what the operations need beyond it (OpsPve).
- sshd: a real OpenSSH server on 127.0.0.1.
- standin: the embedded Supabase stand-in, in-process or as its own process, and signing in to it.
- gateway: the console gateway on its own event loop in a thread.
- streamlit: the dashboard through Streamlit's AppTest, or `streamlit run` as its own process.
- browser: Debian's Chromium through Playwright.
- schema: the database's contract as sorted text (the schema snapshot test, and later migration tests).
"""
