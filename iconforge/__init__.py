"""iconforge: teach a text-to-image model to draw icons in the bioicons style."""
