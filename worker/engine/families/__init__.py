"""One adapter per architecture family: its weights, its block's forward pass through the named
hook points, and its hook table. GPT-2 is the reference (engine.md); the others follow
spec/families.md."""
