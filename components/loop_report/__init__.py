"""Reports people look at rather than read: the active-learning loop report."""
