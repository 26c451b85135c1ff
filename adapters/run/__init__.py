"""The one ``levelsearch compress`` flow for every codec: pipeline, selection schedules, export, plots."""
