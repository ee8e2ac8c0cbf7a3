"""A small web app that hands its slow work to jobkit: see examples/README.md."""
