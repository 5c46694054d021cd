"""torchvision backend: Faster R-CNN with the core OOD box classifier plugged in."""
