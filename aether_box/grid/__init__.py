"""The grid: boxes that admit each other, share what they have and their load, and place
requests (and memory searches) across all of them; see aether_box.grid.service."""
