"""Run report: `runs/<run>/report.md` and a self-contained `report.html`, from stored files alone."""
