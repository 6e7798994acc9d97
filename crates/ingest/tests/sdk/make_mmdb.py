"""Writes a small GeoIP2-City-shaped .mmdb for the GeoIP tests, with mmdb-writer (PyPI).

203.0.113.0/24 is Berlin, Germany; 198.51.100.0/24 is Paris, France (documentation ranges).
Usage: make_mmdb.py OUT.mmdb
"""
import sys

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def place(country, iso, region, city, lat, lon):
    return {
        "country": {"iso_code": iso, "names": {"en": country}},
        "subdivisions": [{"names": {"en": region}}],
        "city": {"names": {"en": city}},
        "location": {"latitude": lat, "longitude": lon},
    }


writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
writer.insert_network(IPSet(["203.0.113.0/24"]), place("Germany", "DE", "Land Berlin", "Berlin", 52.52, 13.405))
writer.insert_network(IPSet(["198.51.100.0/24"]), place("France", "FR", "Île-de-France", "Paris", 48.8566, 2.3522))
writer.to_db_file(sys.argv[1])
