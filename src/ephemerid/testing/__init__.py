"""Dev and test tools shipped with ephemerid: local stand-ins for the cloud, never used in Azure."""
