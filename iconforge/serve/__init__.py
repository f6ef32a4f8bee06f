"""The generation service: a job queue around one generator (jobs), the HTTP API over it (api,
`python -m iconforge.serve`), and two thin clients of that API: the Streamlit web UI (ui) and
the Telegram bot (bot), both talking to it through one small client (client)."""
