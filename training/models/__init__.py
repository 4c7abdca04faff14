"""Models: backbones, necks, heads, fusion modules and the multispectral assemblies (METHODS.md §1, §4-§7)."""
