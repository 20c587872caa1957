"""What is handed to people: the run's report (HTML/Markdown) and its tables."""
