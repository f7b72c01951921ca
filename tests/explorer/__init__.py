"""Tests of g2interp.dashboards and the Streamlit explorer."""
