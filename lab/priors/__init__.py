"""Training and evaluating the built-in priors: procedural data, the prior's networks and training
script, the shape / colour classifier and the view heads, and their evaluations (lab/README.md)."""
