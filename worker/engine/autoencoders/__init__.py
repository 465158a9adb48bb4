"""Sparse autoencoders: one ``Autoencoder`` type the engine sees, and a loader per file format
(TDB's ``<layer>.pt`` state dicts, SAELens's ``cfg.json`` + safetensors), engine.md §9."""
