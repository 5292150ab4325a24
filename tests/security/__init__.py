"""The attack corpus: each test is an attack on a live site or on syft itself, shown to
work unguarded where that is safe to show, and refused by the site."""
