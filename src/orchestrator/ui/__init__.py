"""The admin web UI: server-rendered pages and small ES modules, served by the API process."""
