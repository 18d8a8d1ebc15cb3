"""The artefact the app serves: bundles, their atlas and FAISS indexes, generation with steering, and the opener."""
