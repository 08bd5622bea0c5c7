"""The personalized preference model: a two-tower click model trained on logged impressions with Ray Train."""
