"""The reward room: scores finished navigation episodes and serves that scoring on Ray.

``score`` holds the plain functions (answer match, localisation F1 against the clue intervals,
repeated-call penalty, and an exact re-creation of the reference numbers behind a switch);
``service`` runs a scorer inside Ray actors with per-item error isolation and timeouts.
This room may import ``corpus`` and ``agent`` (the protocol), nothing above them.
"""
