"""Exploratory data analysis of the captioned dataset (stage eda): counts, caption lengths and words,
source image sizes, colour statistics, a word cloud and a contact sheet (README: Explore the data)."""
