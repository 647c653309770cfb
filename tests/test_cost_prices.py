"""The shipped price catalogue is complete and honest; users' files merge over it; bad files fail clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from offramp.cost.prices import adhoc_host, builtin_path, load_catalogue, normalise
from offramp.errors import OfframpError


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_entry_is_dated_sourced_and_marked_unverified():
    cat = load_catalogue()
    assert len(cat.api) >= 10 and len(cat.hosts) >= 15
    assert {h.kind for h in cat.hosts.values()} == {"gpu", "cpu"}
    for name, entry in [*cat.api.items(), *cat.hosts.items()]:
        assert re.match(r"^\d{4}-\d{2}", entry.date), name
        assert entry.source.startswith("https://"), name
        assert entry.verified is False, name  # written offline: nobody checked the live page
    raw = builtin_path().read_text()
    assert "WITHOUT internet" in raw and "verified: false" in raw


def test_catalogue_has_the_models_and_hosts_the_docs_name():
    cat = load_catalogue()
    for name in ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "claude-3-5-haiku", "gemini-2.0-flash"):
        assert cat.api_price(name).output_per_1m > cat.api_price(name).input_per_1m > 0
    for name in ("aws-g5-xlarge", "aws-g6-xlarge", "aws-c7i-xlarge", "lambda-1x-h100", "gcp-g2-standard-4"):
        assert cat.host_price(name).on_demand_per_hour > 0


def test_lookup_is_forgiving_about_separators_and_case():
    cat = load_catalogue()
    assert normalise("AWS_c7i.xlarge") == "aws-c7i-xlarge"
    assert cat.host_price("aws-c7i.xlarge") is cat.host_price("aws-c7i-xlarge")


def test_unknown_names_list_the_known_ones():
    cat = load_catalogue()
    with pytest.raises(OfframpError, match=r"unknown API model 'gpt-9'.*gpt-4o-mini"):
        cat.api_price("gpt-9")
    with pytest.raises(OfframpError, match=r"unknown host 'my-box'.*aws-c7i-xlarge"):
        cat.host_price("my-box")


def test_user_file_overrides_and_extends(tmp_path):
    user = write(
        tmp_path / "mine.yaml",
        {
            "api": {"gpt-4o-mini": {"input_per_1m": 0.1, "date": "2025-09-01", "source": "contract 42"}},
            "hosts": {
                "onprem-l40s": {"kind": "gpu", "on_demand_per_hour": 0.9, "date": "2025-09", "source": "finance"},
                "aws-g6.xlarge": {"spot_per_hour": 0.35, "date": "2025-09", "source": "spot history"},
            },
        },
    )
    cat = load_catalogue([user])
    mini = cat.api_price("gpt-4o-mini")
    assert (mini.input_per_1m, mini.output_per_1m, mini.source) == (0.1, 0.60, "contract 42")  # merged field-wise
    assert cat.host_price("onprem-l40s").on_demand_per_hour == 0.9
    g6 = cat.host_price("aws-g6-xlarge")  # the normalised name merged into the catalogue entry
    assert (g6.per_hour("spot"), g6.per_hour("on_demand")) == (0.35, 0.8048)
    assert cat.sources[-1] == str(user)


def test_user_price_without_date_or_source_is_refused(tmp_path):
    user = write(tmp_path / "p.yaml", {"api": {"gpt-4o-mini": {"input_per_1m": 0.1}}})
    with pytest.raises(OfframpError, match="needs its own date and source"):
        load_catalogue([user])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input_per_1m": -1.0}, "greater than or equal to 0"),
        ({"batch_discount": 1.5}, "less than 1"),
        ({"date": "last week"}, "not YYYY-MM"),
    ],
)
def test_bad_user_numbers_fail_with_the_key(tmp_path, entry, message):
    user = write(tmp_path / "p.yaml", {"api": {"gpt-4o-mini": {"date": "2025-09", "source": "x", **entry}}})
    with pytest.raises(OfframpError, match=rf"api\.gpt-4o-mini\..*{message}"):
        load_catalogue([user])


def test_new_entry_missing_a_price_fails(tmp_path):
    user = write(tmp_path / "p.yaml", {"hosts": {"box": {"kind": "cpu", "date": "2025-09", "source": "x"}}})
    with pytest.raises(OfframpError, match=r"hosts\.box\.on_demand_per_hour: Field required"):
        load_catalogue([user])


def test_unreadable_or_wrong_shape_files(tmp_path):
    with pytest.raises(OfframpError, match="cannot read"):
        load_catalogue([tmp_path / "missing.yaml"])
    (tmp_path / "bad.yaml").write_text("api: [unclosed")
    with pytest.raises(OfframpError, match="not valid YAML"):
        load_catalogue([tmp_path / "bad.yaml"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(OfframpError, match="needs an 'api' and/or 'hosts'"):
        load_catalogue([tmp_path / "list.yaml"])


def test_unknown_pricing_and_missing_reserved_price():
    host = load_catalogue().host_price("aws-c7i-xlarge")
    with pytest.raises(OfframpError, match="unknown pricing"):
        host.per_hour("cheap")
    with pytest.raises(OfframpError, match="no reserved_1y price"):
        host.per_hour("reserved_1y")


def test_adhoc_host_from_the_flag():
    host = adhoc_host(0.5)
    assert (host.on_demand_per_hour, host.source) == (0.5, "user flag --host-price-per-hour")
    with pytest.raises(OfframpError, match="must be > 0"):
        adhoc_host(-1)


def test_catalogue_host_price_for_the_bench():
    """serve/'s bench looks named hosts up through this seam: a list-price record with its date and page."""
    from offramp.cost import catalogue_host_price

    rec = catalogue_host_price("aws-g6.xlarge")
    assert rec == {
        "value": 0.8048, "unit": "USD/hour", "source": "list_price", "date": "2025-06",
        "reference": "https://aws.amazon.com/ec2/pricing/on-demand/", "verified": False,
    }  # fmt: skip
    with pytest.raises(OfframpError, match="unknown host"):
        catalogue_host_price("nope")
