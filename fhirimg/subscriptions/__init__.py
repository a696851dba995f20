"""FHIR R5 topic-based Subscriptions: topics, matching on the change sequence, delivery."""
