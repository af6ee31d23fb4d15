"""The analysis family: initialisations, regression, theory and the loss landscape
(docs/method.md sections 6 and 7), each a run directory of resumable units."""
