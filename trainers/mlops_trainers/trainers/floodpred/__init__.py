"""The ``floodpred`` trainer: flood frames (depth, velocity) predicted from past frames."""
