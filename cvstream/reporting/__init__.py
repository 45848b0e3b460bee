"""Reading finished runs back: terminal tables, PNG plots, the HTML page, the timeline's plots, the cost projection."""
