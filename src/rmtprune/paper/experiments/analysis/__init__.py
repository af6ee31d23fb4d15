"""The analysis family: initialisations, regression, theory and the loss landscape
(SPEC sections 7-10), each a run directory of resumable units."""
