"""Work: workers claim queued jobs and run the pipeline (load, segment, quantify, report)."""
