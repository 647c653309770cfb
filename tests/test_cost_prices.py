"""The shipped price catalogue is complete and honest; users' files merge over it; bad files fail clearly."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml

from offramp.cost.prices import ApiPrice, HostPrice, adhoc_host, builtin_path, load_catalogue, normalise
from offramp.errors import OfframpError


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_entry_is_dated_and_sourced():
    cat = load_catalogue()
    assert len(cat.api) >= 10 and len(cat.hosts) >= 15
    assert {h.kind for h in cat.hosts.values()} == {"gpu", "cpu"}
    for name, entry in [*cat.api.items(), *cat.hosts.items()]:
        assert re.match(r"^\d{4}-\d{2}", entry.date), name
        assert entry.source.startswith("https://"), name


def test_the_header_documents_every_field():
    header = "".join(line for line in builtin_path().read_text().splitlines(keepends=True) if line.startswith("#"))
    for field in [*ApiPrice.model_fields, *HostPrice.model_fields]:
        assert field in header, field


def test_catalogue_has_the_models_and_hosts_the_docs_name():
    cat = load_catalogue()
    for name in ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "claude-3-5-haiku", "gemini-2.0-flash"):
        price = cat.api_price(name, allow_retired=True)  # named in the docs even after the vendor retired it
        assert price.output_per_1m > price.input_per_1m > 0
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
    shipped = load_catalogue()
    cat = load_catalogue([user])
    mini = cat.api_price("gpt-4o-mini")
    assert (mini.input_per_1m, mini.source) == (0.1, "contract 42")
    assert mini.output_per_1m == shipped.api_price("gpt-4o-mini").output_per_1m  # merged field-wise
    assert cat.host_price("onprem-l40s").on_demand_per_hour == 0.9
    g6 = cat.host_price("aws-g6-xlarge")  # the normalised name merged into the catalogue entry
    assert g6.per_hour("spot") == 0.35
    assert g6.per_hour("on_demand") == shipped.host_price("aws-g6-xlarge").on_demand_per_hour
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
    host = adhoc_host(0.5)  # gives an on-demand price only
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
    entry = load_catalogue().host_price("aws-g6-xlarge")
    assert rec == {
        "value": entry.on_demand_per_hour, "unit": "USD/hour", "source": "list_price", "date": entry.date,
        "reference": entry.source, "verified": entry.verified,
    }  # fmt: skip
    with pytest.raises(OfframpError, match="unknown host"):
        catalogue_host_price("nope")


def test_a_retired_model_is_refused_in_one_line_unless_allowed(tmp_path):
    user = write(
        tmp_path / "p.yaml",
        {"api": {"old-llm": {"input_per_1m": 1.0, "output_per_1m": 2.0, "retired": dt.date(2026, 2, 19),
                             "date": "2025-06", "source": "https://vendor.example/deprecations"}}},
    )  # fmt: skip
    cat = load_catalogue([user])
    with pytest.raises(OfframpError) as e:
        cat.api_price("old-llm")
    message = str(e.value)
    assert "\n" not in message
    assert "old-llm was retired on 2026-02-19" in message and "--allow-retired" in message
    assert cat.api_price("old_llm", allow_retired=True).input_per_1m == 1.0  # normalised name, allowed


def test_every_catalogue_model_marked_retired_is_refused():
    cat = load_catalogue()
    for name, entry in cat.api.items():
        if entry.retired:
            with pytest.raises(
                OfframpError, match=rf"^{re.escape(name)} was retired on {entry.retired} .*--allow-retired"
            ):
                cat.api_price(name)
            assert cat.api_price(name, allow_retired=True) is entry
        else:
            assert cat.api_price(name) is entry


def test_the_default_pipeline_model_is_not_retired():
    assert load_catalogue().api_price("gpt-4o-mini").retired is None


def test_a_user_file_can_retire_or_revive_a_model(tmp_path):
    retire = write(
        tmp_path / "p.yaml", {"api": {"gpt-4o-mini": {"retired": "2027-01-14", "date": "2027-01", "source": "x"}}}
    )
    with pytest.raises(OfframpError, match="retired on 2027-01-14"):
        load_catalogue([retire]).api_price("gpt-4o-mini")
    revive = write(tmp_path / "q.yaml", {"api": {"gpt-4o-mini": {"retired": None, "date": "2027-02", "source": "y"}}})
    assert load_catalogue([retire, revive]).api_price("gpt-4o-mini").retired is None  # the later file wins


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"cache_write_per_1m": -0.1}, r"cache_write_per_1m: Input should be greater than or equal to 0"),
        ({"cache_min_prompt_tokens": -1}, r"cache_min_prompt_tokens: Input should be greater than or equal to 0"),
        ({"retired": "soon"}, r"retired: Value error, date 'soon' is not YYYY-MM"),
    ],
)
def test_bad_cache_and_retirement_fields_fail_with_the_key(tmp_path, entry, message):
    user = write(tmp_path / "p.yaml", {"api": {"gpt-4o-mini": {"date": "2025-09", "source": "x", **entry}}})
    with pytest.raises(OfframpError, match=rf"api\.gpt-4o-mini\.{message}"):
        load_catalogue([user])


def test_cache_fields_parse_from_a_user_file(tmp_path):
    user = write(
        tmp_path / "p.yaml",
        {"api": {"my-llm": {"input_per_1m": 2.0, "output_per_1m": 8.0, "cached_input_per_1m": 0.2,
                            "cache_write_per_1m": 2.5, "cache_min_prompt_tokens": 1024, "reasoning": True,
                            "retired": "2026-12", "date": "2025-09", "source": "x"}}},
    )  # fmt: skip
    p = load_catalogue([user]).api_price("my-llm", allow_retired=True)
    assert (p.cache_write_per_1m, p.cache_min_prompt_tokens, p.reasoning, p.retired) == (2.5, 1024, True, "2026-12")
    bare = {"input_per_1m": 1, "output_per_1m": 1, "date": "2025-09", "source": "x"}
    b = load_catalogue([write(tmp_path / "q.yaml", {"api": {"b": bare}})]).api_price("b")
    assert (b.cache_write_per_1m, b.cache_min_prompt_tokens, b.reasoning, b.retired) == (None, None, False, None)


def test_sold_in_multiples_of_parses_and_rejects_zero(tmp_path):
    box = {"kind": "gpu", "on_demand_per_hour": 4.0, "date": "2025-09", "source": "x"}
    cat = load_catalogue(
        [write(tmp_path / "p.yaml", {"hosts": {"eighth": {**box, "sold_in_multiples_of": 8}, "box": box}})]
    )
    assert (cat.host_price("eighth").sold_in_multiples_of, cat.host_price("box").sold_in_multiples_of) == (8, 1)
    user = write(tmp_path / "q.yaml", {"hosts": {"eighth": {**box, "sold_in_multiples_of": 0}}})
    with pytest.raises(
        OfframpError, match=r"hosts\.eighth\.sold_in_multiples_of: Input should be greater than or equal to 1"
    ):
        load_catalogue([user])


def test_per_gpu_entries_of_whole_instances_say_so():
    """An entry priced as a share of a multi-GPU instance ("1/8 of ...") is sold only in whole instances."""
    for name, host in load_catalogue().hosts.items():
        share = re.match(r"^1/(\d+) of ", host.accelerator)
        if share:
            assert host.sold_in_multiples_of == int(share.group(1)), name


def test_anthropic_cache_writes_cost_at_least_the_input_price():
    """Anthropic bills cache writes above the input price: a catalogue that forgets it flatters the API."""
    for name, p in load_catalogue().api.items():
        if p.vendor == "anthropic" and p.cached_input_per_1m is not None:
            assert p.cache_write_per_1m is not None and p.cache_write_per_1m >= p.input_per_1m, name


def test_every_cached_price_says_when_the_cache_starts():
    for name, p in load_catalogue().api.items():
        if p.cached_input_per_1m is not None:
            assert p.cache_min_prompt_tokens is not None, name


def test_reasoning_models_are_flagged():
    """The gpt-5 family bills hidden reasoning tokens as output: a flag the cost model reads."""
    for name, p in load_catalogue().api.items():
        if name.startswith("gpt-5"):
            assert p.reasoning, name
