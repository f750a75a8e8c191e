"""Read-only views of a study: status, CSV export, the HTML report and figures, the dashboard.
Imports sweep.core and sweep.search, pandas and plotly; no torch; no other layer imports views."""
