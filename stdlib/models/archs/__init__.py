"""One table per architecture (`sites.ArchTable`), one module each; pure data, no torch.

Each module registers its table with `sites.register_arch` where it is defined; `sites.arch_for`
imports this package's modules on first lookup, so describing a model never imports torch.
"""
