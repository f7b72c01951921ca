"""Pages of the g2interp explorer (apps/explorer.py); each renders with Streamlit over the public API."""
