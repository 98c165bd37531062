"""Scoring: behavioural and fit rule scores with exact decay, the score ledger, lifecycle
stages and MQLs, the predictive model, and the simulator that proves them."""
