"""gazegen: LiveGaze gaze redirection and labelled gaze data synthesis."""
