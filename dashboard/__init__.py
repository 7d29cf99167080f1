"""proxwatch dashboard (Streamlit): app.py, data.py (RPC only, via the supabase client), charts.py."""
