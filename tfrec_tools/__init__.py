"""Command-line tools around tfrec: load generator, A/B replay, schedule CLI, demo model.

Nothing here is on the serving path; the serving packages never import it.
"""
