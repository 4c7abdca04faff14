"""Runtime core: model card, anchors/box coding, (later) pairing, preprocessing, inconsistency, capture."""
