"""extract/backbones stage."""
