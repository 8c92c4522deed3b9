"""condor_annex: burst an HTCondor pool into AWS."""

__version__ = "0.1.0"
