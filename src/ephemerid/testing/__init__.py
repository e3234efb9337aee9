"""Dev and test tools shipped with ephemerid: local stand-ins for the cloud, never used in Azure,
and ``settle``, the loop that drives jobs to their end (the tests' and ``eph submit``'s)."""
