"""Federated EMNIST from three sources: TFF's own file, a LEAF FEMNIST import, and a synthetic set."""
