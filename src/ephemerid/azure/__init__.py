"""Azure connections, shared by the Azure adapters. Loads no Azure SDK until one is used."""
