"""A small FHIR R4 server over files: the search engine behind the emulator's folder FHIR sources.

:class:`FhirStore` holds resources loaded from a folder (:meth:`FhirStore.from_folder`): every ``*.json``
file (a Bundle, whose ``entry[].resource`` are collected, a single resource, or a list of them) and every
``*.ndjson`` file (one resource or Bundle per line), recursively, in path order. Resources without an
``id`` get one (the UUID of an ``urn:uuid:`` ``fullUrl``, or a deterministic one), and references to a
Bundle entry's ``fullUrl`` are rewritten to ``Type/id``, as a server does when it processes a transaction.

:meth:`FhirStore.handle` answers the read-only REST interactions a FLAME analysis uses, the way a FHIR
server does (HAPI's strict handling of unknown parameters):

- ``Type`` search: a ``searchset`` Bundle with ``total``, ``entry[{fullUrl, resource, search}]`` and
  ``link[{relation, url}]`` (``self``, ``first``, ``previous``, ``next``, ``last``); paging with ``_count``
  (default :data:`DEFAULT_PAGE_SIZE`, at most :data:`MAX_PAGE_SIZE`) and ``_offset``, links absolute under
  the ``base_url`` given, so that the part after ``/fhir/`` can be queried again;
- ``_summary=count`` and ``_count=0``: a Bundle with ``total`` only; ``_sort`` on the parameters below;
- ``Type/id`` read; ``metadata`` (a minimal CapabilityStatement);
- search parameters: ``_id`` on every type, and per type the ones in :data:`SEARCH_PARAMETERS`
  (token ``system|code``/``code``/``|code``/``system|``; date with prefixes ``eq ne gt lt ge le sa eb
  ap``; reference ``Type/id``, ``id`` or an absolute URL; string, starts-with and case-insensitive).
  A comma ORs values within a parameter, repeated parameters AND; modifiers ``:missing``, ``:exact``,
  ``:contains``, ``:not`` (token), ``:Type`` (reference).

Errors are OperationOutcomes: unknown resource type 404 ``not-supported`` (as HAPI and sekmet), unknown
id 404 ``not-found``, unknown or unsupported parameters 400 ``not-supported``, malformed values 400
``invalid``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from flame.errors import FlameError

#: Content type of every answer.
FHIR_JSON = "application/fhir+json;charset=utf-8"
#: Page size of a search without ``_count``.
DEFAULT_PAGE_SIZE = 50
#: Largest page a search returns; a larger ``_count`` is lowered to it (as HAPI does).
MAX_PAGE_SIZE = 1000

_R4_TYPE_NAMES = """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent
    Basic Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam
    CatalogEntry ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem
    Communication CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent
    Contract Coverage CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device
    DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest
    DocumentReference EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest EnrollmentResponse
    EpisodeOfCare EventDefinition Evidence EvidenceVariable ExampleScenario ExplanationOfBenefit
    FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy
    Immunization ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan
    Invoice Library Linkage List Location Measure MeasureReport Media Medication MedicationAdministration
    MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement MedicinalProduct
    MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
    MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured
    MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect
    MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionOrder Observation
    ObservationDefinition OperationDefinition OperationOutcome Organization OrganizationAffiliation
    Parameters Patient PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner
    PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson RequestGroup
    ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
    RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
    StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid SubstancePolymer
    SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification
    SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet
    VerificationResult VisionPrescription
"""
#: The resource types of FHIR R4 (4.0.1).
R4_RESOURCE_TYPES = frozenset(_R4_TYPE_NAMES.split())

ParamKind = Literal["token", "date", "reference", "string"]

#: Deterministic ids of resources loaded without one.
_ID_NAMESPACE = uuid.UUID("0b6f3c52-7a1e-4d8a-9c1e-5f2b8e6d4a31")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_UNPACKED_BUNDLES = {
    "transaction",
    "batch",
    "collection",
    "searchset",
    "transaction-response",
    "batch-response",
}


class FhirError(Exception):
    """A FHIR error answer: HTTP ``status`` and an OperationOutcome issue ``code`` with ``diagnostics``."""

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome resource of this error."""
        return operation_outcome(self.code, self.diagnostics)


class FhirLoadError(FlameError, ValueError):
    """A FHIR file could not be read as FHIR JSON or NDJSON (what and where is in the message)."""


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


# -- search parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchParameter:
    """A search parameter over the elements at dotted ``paths`` (``name.family``; ``effective[x]``'s choices)."""

    name: str
    kind: ParamKind
    paths: tuple[str, ...]
    #: For references: the only resource type the parameter points at (``patient`` -> ``Patient``).
    target: str | None = None


def _p(name: str, kind: ParamKind, *paths: str, target: str | None = None) -> SearchParameter:
    return SearchParameter(name, kind, paths, target)


def _clinical(
    code: str | None, date: tuple[str, ...], *extra: SearchParameter, patient_field: str = "subject"
) -> dict[str, SearchParameter]:
    params = [_p("patient", "reference", patient_field, target="Patient"), *extra]
    if patient_field == "subject":
        params.append(_p("subject", "reference", "subject"))
    if code is not None:
        params.append(_p("code", "token", code))
    if date:
        params.append(_p("date", "date", *date))
    return {p.name: p for p in params}


_STATUS = _p("status", "token", "status")
_ENCOUNTER = _p("encounter", "reference", "encounter")
_CATEGORY = _p("category", "token", "category")

#: Search parameters per resource type (besides ``_id``, which every type has).
SEARCH_PARAMETERS: dict[str, dict[str, SearchParameter]] = {
    "Patient": {
        p.name: p
        for p in (
            _p("gender", "token", "gender"),
            _p("birthdate", "date", "birthDate"),
            _p("identifier", "token", "identifier"),
            _p("family", "string", "name.family"),
            _p("given", "string", "name.given"),
            _p("name", "string", "name.family", "name.given", "name.text"),
            _p("active", "token", "active"),
        )
    },
    "Observation": _clinical(
        "code", ("effectiveDateTime", "effectivePeriod", "effectiveInstant"), _STATUS, _CATEGORY, _ENCOUNTER
    ),
    "Condition": _clinical(
        "code",
        (),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
        _p("clinical-status", "token", "clinicalStatus"),
        _CATEGORY,
        _ENCOUNTER,
    ),
    "Encounter": _clinical(None, ("period",), _STATUS, _p("class", "token", "class")),
    "Procedure": _clinical("code", ("performedDateTime", "performedPeriod"), _STATUS, _ENCOUNTER),
    "DiagnosticReport": _clinical("code", ("effectiveDateTime", "effectivePeriod"), _STATUS, _CATEGORY),
    "MedicationRequest": _clinical(
        "medicationCodeableConcept", (), _STATUS, _p("authoredon", "date", "authoredOn"), _ENCOUNTER
    ),
    "MedicationStatement": _clinical(
        "medicationCodeableConcept", ("effectiveDateTime", "effectivePeriod"), _STATUS
    ),
    "Immunization": _clinical("vaccineCode", ("occurrenceDateTime",), _STATUS, patient_field="patient"),
    "AllergyIntolerance": _clinical(
        "code", ("recordedDate",), _p("clinical-status", "token", "clinicalStatus"), patient_field="patient"
    ),
}

_ID_PARAM = _p("_id", "token", "id")
_CONTROL = {"_count", "_offset", "_summary", "_total", "_format", "_pretty", "_sort"}
_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_MODIFIERS: dict[ParamKind, set[str]] = {
    "token": {"missing", "not"},
    "date": {"missing"},
    "reference": {"missing"},
    "string": {"missing", "exact", "contains"},
}


def search_parameters(resource_type: str) -> dict[str, SearchParameter]:
    """The search parameters of ``resource_type`` this store supports, ``_id`` included."""
    return {"_id": _ID_PARAM, **SEARCH_PARAMETERS.get(resource_type, {})}


# -- loading ---------------------------------------------------------------------------------------------


def load_folder(folder: Path) -> list[dict[str, Any]]:
    """All resources of the ``*.json`` and ``*.ndjson`` files under ``folder``, in path order.

    Files and folders whose names start with a dot are skipped; each file is read as
    :func:`load_file` reads it, and references across files are resolved too. Raises
    :class:`FhirLoadError` for a file that is not FHIR JSON.
    """
    loader = _Loader()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in (".json", ".ndjson") and p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        _load_into(loader, path, rel)
    return loader.finish()


def load_file(path: Path | str, name: str | None = None) -> list[dict[str, Any]]:
    """The resources of one FHIR file: the one loader of FHIR bundles in this package.

    ``*.ndjson``: one resource, list or Bundle a line; any other name: one JSON document (a resource, a
    list of them, or a Bundle). Bundles of type ``transaction``, ``batch``, ``collection``,
    ``searchset`` and their responses are unpacked (nested ones too). A resource without an ``id`` gets
    the UUID of its ``urn:uuid:`` ``fullUrl`` or a deterministic one; references to an entry's
    ``fullUrl`` become ``Type/id``; of resources with the same type and id the last one counts.
    Raises :class:`FhirLoadError` (naming ``name``, by default the path) for anything else.
    """
    loader = _Loader()
    _load_into(loader, Path(path), str(path) if name is None else name)
    return loader.finish()


def _load_into(loader: _Loader, path: Path, name: str) -> None:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ndjson":
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    loader.add(json.loads(line), f"{name}:{number}")
        else:
            loader.add(json.loads(text), name)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, FhirLoadError):
            raise
        raise FhirLoadError(f"cannot read {name} as FHIR JSON: {exc}") from exc


class _Loader:
    def __init__(self) -> None:
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.full_urls: dict[str, str] = {}

    def add(self, item: Any, where: str) -> None:
        if isinstance(item, list):
            for i, element in enumerate(item):
                self.add(element, f"{where}[{i}]")
            return
        if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
            raise FhirLoadError(f"{where}: not a FHIR resource (no resourceType)")
        if item["resourceType"] == "Bundle" and item.get("type") in _UNPACKED_BUNDLES:
            for i, entry in enumerate(item.get("entry") or []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if resource is None:
                    continue
                full_url = entry.get("fullUrl")
                self.add_resource(
                    resource, f"{where}#entry{i}", full_url if isinstance(full_url, str) else None
                )
            return
        self.add_resource(item, where, None)

    def add_resource(self, resource: Any, where: str, full_url: str | None) -> None:
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirLoadError(f"{where}: not a FHIR resource (no resourceType)")
        rtype = resource["resourceType"]
        if rtype == "Bundle" and resource.get("type") in _UNPACKED_BUNDLES:
            self.add(resource, where)
            return
        if rtype not in R4_RESOURCE_TYPES:
            raise FhirLoadError(f"{where}: unknown resource type {rtype!r}")
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            if full_url is not None and full_url.startswith("urn:uuid:"):
                rid = full_url[len("urn:uuid:") :]
            else:
                rid = str(uuid.uuid5(_ID_NAMESPACE, where))
            resource["id"] = rid
        if full_url is not None:
            self.full_urls[full_url] = f"{rtype}/{rid}"
        self.resources[(rtype, rid)] = resource

    def finish(self) -> list[dict[str, Any]]:
        resources = list(self.resources.values())
        if self.full_urls:
            for resource in resources:
                _rewrite_references(resource, self.full_urls)
        return resources


def _rewrite_references(node: Any, mapping: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in mapping:
            node["reference"] = mapping[ref]
        for value in node.values():
            if isinstance(value, (dict, list)):
                _rewrite_references(value, mapping)
    elif isinstance(node, list):
        for value in node:
            _rewrite_references(value, mapping)


# -- the store -------------------------------------------------------------------------------------------


class FhirStore:
    """Resources in memory, searchable like a FHIR R4 server (see the module docstring)."""

    def __init__(self, resources: Iterable[dict[str, Any]] = ()) -> None:
        self._by_type: dict[str, dict[str, dict[str, Any]]] = {}
        for resource in resources:
            rtype = resource["resourceType"]
            self._by_type.setdefault(rtype, {})[str(resource["id"])] = resource

    @classmethod
    def from_folder(cls, folder: Path | str) -> FhirStore:
        """A store of the resources of ``folder`` (see :func:`load_folder`)."""
        return cls(load_folder(Path(folder)))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_type.values())

    def types(self) -> list[str]:
        """The resource types present, sorted."""
        return sorted(self._by_type)

    def resources(self, resource_type: str) -> list[dict[str, Any]]:
        """All resources of one type, in load order."""
        return list(self._by_type.get(resource_type, {}).values())

    # -- REST ------------------------------------------------------------------------------------------

    def handle(
        self, path: str, params: Sequence[tuple[str, str]], base_url: str
    ) -> tuple[int, dict[str, Any]]:
        """Answer ``GET {base_url}/{path}?{params}``: (HTTP status, FHIR JSON body)."""
        try:
            return 200, self._handle(path, params, base_url.rstrip("/"))
        except FhirError as exc:
            return exc.status, exc.outcome()

    def _handle(self, path: str, params: Sequence[tuple[str, str]], base: str) -> dict[str, Any]:
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts:
            raise FhirError(
                400, "not-supported", "System-level interactions are not supported by this server"
            )
        if parts == ["metadata"]:
            return self.capability_statement(base)
        rtype = parts[0]
        if rtype not in R4_RESOURCE_TYPES:
            if rtype.startswith("$") or rtype.startswith("_"):
                raise FhirError(400, "not-supported", f"Operation '{rtype}' is not supported by this server")
            raise FhirError(404, "not-supported", f"Unknown resource type '{rtype}'")
        if len(parts) == 1:
            return self.search(rtype, params, base)
        if len(parts) == 2 and not parts[1].startswith(("_", "$")):
            return self.read(rtype, parts[1])
        raise FhirError(
            400, "not-supported", f"The interaction GET {'/'.join(parts)} is not supported by this server"
        )

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """The resource ``resource_type/resource_id``; :class:`FhirError` 404 if there is none."""
        if resource_type not in R4_RESOURCE_TYPES:
            raise FhirError(404, "not-supported", f"Unknown resource type '{resource_type}'")
        if not _ID_RE.match(resource_id):
            raise FhirError(400, "invalid", f"Invalid resource id '{resource_id}'")
        resource = self._by_type.get(resource_type, {}).get(resource_id)
        if resource is None:
            raise FhirError(404, "not-found", f"Resource {resource_type}/{resource_id} is not known")
        return resource

    def search(self, resource_type: str, params: Sequence[tuple[str, str]], base_url: str) -> dict[str, Any]:
        """A ``searchset`` Bundle (one page) for ``GET {base_url}/{resource_type}?{params}``."""
        base = base_url.rstrip("/")
        if resource_type not in R4_RESOURCE_TYPES:
            raise FhirError(404, "not-supported", f"Unknown resource type '{resource_type}'")
        known = search_parameters(resource_type)
        filters: list[tuple[SearchParameter, str | None, str]] = []
        kept: list[tuple[str, str]] = []
        control: dict[str, str] = {}
        for name, value in params:
            bare, _, modifier = name.partition(":")
            if bare in _CONTROL:
                if modifier:
                    raise FhirError(400, "not-supported", f"Parameter '{name}' does not take a modifier")
                control.setdefault(bare, value)
                if bare not in ("_count", "_offset"):
                    kept.append((name, value))
                continue
            param = known.get(bare)
            if param is None:
                raise FhirError(
                    400,
                    "not-supported",
                    f"Unknown search parameter '{bare}' for resource type '{resource_type}'. Valid search "
                    f"parameters for this search are: [{', '.join(sorted(known))}]",
                )
            if modifier and not (
                modifier in _MODIFIERS[param.kind]
                or (param.kind == "reference" and param.target is None and modifier in R4_RESOURCE_TYPES)
            ):
                raise FhirError(400, "not-supported", f"Modifier ':{modifier}' is not supported on '{bare}'")
            filters.append((param, modifier or None, value))
            kept.append((name, value))
        count = _int_param(control, "_count", DEFAULT_PAGE_SIZE)
        offset = _int_param(control, "_offset", 0)
        summary = control.get("_summary", "false")
        if summary not in ("count", "false"):
            raise FhirError(400, "not-supported", f"_summary={summary} is not supported by this server")
        fmt = control.get("_format")
        if fmt is not None and fmt not in _FORMATS:
            raise FhirError(400, "not-supported", f"_format={fmt} is not supported: this server answers JSON")
        if control.get("_total", "accurate") not in ("accurate", "estimate", "none"):
            raise FhirError(400, "invalid", f"Invalid _total value '{control['_total']}'")
        matchers = [_matcher(param, modifier, value) for param, modifier, value in filters]
        matches = [r for r in self._by_type.get(resource_type, {}).values() if all(m(r) for m in matchers)]
        if "_sort" in control:
            matches = _sorted(matches, control["_sort"], known)
        total = len(matches)
        count = min(count, MAX_PAGE_SIZE)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": _now()},
            "type": "searchset",
            "total": total,
        }

        def link(relation: str, at: int) -> dict[str, str]:
            query = urlencode([*kept, ("_count", str(count)), ("_offset", str(at))])
            return {"relation": relation, "url": f"{base}/{resource_type}?{query}"}

        if summary == "count" or count == 0:
            bundle["link"] = [link("self", offset)]
            return bundle
        page = matches[offset : offset + count]
        links = [link("self", offset), link("first", 0)]
        if offset > 0:
            links.append(link("previous", max(0, offset - count)))
        if offset + count < total:
            links.append(link("next", offset + count))
        links.append(link("last", ((total - 1) // count) * count if total else 0))
        bundle["link"] = links
        bundle["entry"] = [
            {
                "fullUrl": f"{base}/{resource_type}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in page
        ]
        return bundle

    def capability_statement(self, base_url: str) -> dict[str, Any]:
        """A minimal CapabilityStatement: read and search-type on every type present, with its parameters."""
        kinds = {"token": "token", "date": "date", "reference": "reference", "string": "string"}
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": _now()[:10],
            "kind": "instance",
            "software": {"name": "flame emulated FHIR source"},
            "implementation": {"description": "folder FHIR source", "url": base_url},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": rtype,
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": [
                                {"name": p.name, "type": kinds[p.kind]}
                                for p in search_parameters(rtype).values()
                            ],
                        }
                        for rtype in self.types()
                    ],
                }
            ],
        }


def _int_param(control: dict[str, str], name: str, default: int) -> int:
    raw = control.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FhirError(400, "invalid", f"Invalid {name} value '{raw}': not an integer") from None
    if value < 0:
        raise FhirError(400, "invalid", f"Invalid {name} value '{raw}': negative")
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- matching --------------------------------------------------------------------------------------------


#: A test of one resource (or of one element of it) against a search value.
Matcher = Callable[[Any], bool]


def split_values(value: str) -> list[str]:
    """Split a search value on commas not escaped with a backslash, and unescape ``\\,`` ``\\|`` ``\\$``."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt if nxt in (",", "$", "|", "\\") else ch + nxt)
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _elements(resource: dict[str, Any], path: str) -> list[Any]:
    """The values at a dotted path (``name.family``), lists flattened."""
    values: list[Any] = [resource]
    for step in path.split("."):
        nxt: list[Any] = []
        for value in values:
            if isinstance(value, dict) and step in value:
                found = value[step]
                nxt.extend(found if isinstance(found, list) else [found])
        values = nxt
    return values


def _values(resource: dict[str, Any], param: SearchParameter) -> list[Any]:
    return [value for path in param.paths for value in _elements(resource, path)]


def _matcher(param: SearchParameter, modifier: str | None, value: str) -> Matcher:
    if modifier == "missing":
        if value not in ("true", "false"):
            raise FhirError(
                400, "invalid", f"Invalid value '{value}' for {param.name}:missing: use true or false"
            )
        want_missing = value == "true"
        return lambda r: (not _values(r, param)) == want_missing
    alternatives = split_values(value)
    if not alternatives or any(v == "" for v in alternatives):
        raise FhirError(400, "invalid", f"Empty value in search parameter '{param.name}'")
    if param.kind == "token":
        tests = [_token_test(v) for v in alternatives]
        if modifier == "not":
            return lambda r: not any(t(x) for x in _values(r, param) for t in tests)
        return lambda r: any(t(x) for x in _values(r, param) for t in tests)
    if param.kind == "date":
        date_tests = [_date_test(param.name, v) for v in alternatives]
        return lambda r: any(t(x) for x in _values(r, param) for t in date_tests)
    if param.kind == "reference":
        refs = [_reference_key(v, modifier or param.target) for v in alternatives]
        return lambda r: any(_reference_matches(x, refs, param.target) for x in _values(r, param))
    needles = [v if modifier == "exact" else _fold(v) for v in alternatives]

    def string_test(resource: dict[str, Any]) -> bool:
        for x in _values(resource, param):
            if not isinstance(x, str):
                continue
            hay = x if modifier == "exact" else _fold(x)
            for needle in needles:
                if modifier == "exact" and hay == needle:
                    return True
                if modifier == "contains" and needle in hay:
                    return True
                if modifier is None and hay.startswith(needle):
                    return True
        return False

    return string_test


def _fold(text: str) -> str:
    return text.casefold()


def _token_test(value: str) -> Matcher:
    if "|" in value:
        system, _, code = value.partition("|")
        has_system = True
    else:
        system, code, has_system = "", value, False

    def coding_matches(coding_system: Any, coding_code: Any) -> bool:
        if has_system and system == "" and coding_system not in (None, ""):
            return False
        if has_system and system and coding_system != system:
            return False
        return code == "" or str(coding_code) == code

    def test(element: Any) -> bool:
        if isinstance(element, bool):
            return (not has_system or system == "") and code == ("true" if element else "false")
        if isinstance(element, (str, int)):
            return (not has_system or system == "") and str(element) == code
        if isinstance(element, dict):
            if "coding" in element or "text" in element:
                return any(
                    coding_matches(c.get("system"), c.get("code"))
                    for c in element.get("coding") or []
                    if isinstance(c, dict)
                )
            if "code" in element:
                return coding_matches(element.get("system"), element.get("code"))
            if "value" in element:
                return coding_matches(element.get("system"), element.get("value"))
        return False

    return test


_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_MIN = datetime.min.replace(tzinfo=timezone.utc)
_MAX = datetime.max.replace(tzinfo=timezone.utc)


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The half-open UTC interval a FHIR date, dateTime or instant stands for; None if malformed."""
    m = _DATE_RE.match(text.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, tz = m.groups()
    try:
        tzinfo = timezone.utc
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            tzinfo = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        if month is None:
            start = datetime(int(year), 1, 1, tzinfo=tzinfo)
            end = datetime(int(year) + 1, 1, 1, tzinfo=tzinfo) if int(year) < 9999 else _MAX
        elif day is None:
            start = datetime(int(year), int(month), 1, tzinfo=tzinfo)
            end = (start + timedelta(days=32)).replace(day=1)
        elif hour is None:
            start = datetime(int(year), int(month), int(day), tzinfo=tzinfo)
            end = start + timedelta(days=1)
        else:
            micro = int((fraction or "0")[:6].ljust(6, "0"))
            start = datetime(
                int(year),
                int(month),
                int(day),
                int(hour),
                int(minute),
                int(second or 0),
                micro,
                tzinfo=tzinfo,
            )
            step = timedelta(minutes=1) if second is None else timedelta(seconds=1)
            if fraction:
                step = timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
            end = start + step
    except (ValueError, OverflowError):
        return None
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def _target_range(element: Any) -> tuple[datetime, datetime] | None:
    if isinstance(element, str):
        return date_range(element)
    if isinstance(element, dict) and ("start" in element or "end" in element):
        start = date_range(element["start"]) if isinstance(element.get("start"), str) else None
        end = date_range(element["end"]) if isinstance(element.get("end"), str) else None
        return (start[0] if start else _MIN, end[1] if end else _MAX)
    return None


def _date_test(name: str, value: str) -> Matcher:
    prefix = "eq"
    if value[:2] in _PREFIXES and value[2:3].isdigit():
        prefix, value = value[:2], value[2:]
    search = date_range(value)
    if search is None:
        raise FhirError(400, "invalid", f"Invalid date/time value '{value}' for parameter '{name}'")
    s0, s1 = search

    def test(element: Any) -> bool:
        target = _target_range(element)
        if target is None:
            return False
        t0, t1 = target
        contained = s0 <= t0 and t1 <= s1
        if prefix == "eq":
            return contained
        if prefix == "ne":
            return not contained
        if prefix == "gt":
            return t1 > s1
        if prefix == "lt":
            return t0 < s0
        if prefix == "ge":
            return t1 > s1 or contained
        if prefix == "le":
            return t0 < s0 or contained
        if prefix == "sa":
            return t0 >= s1
        if prefix == "eb":
            return t1 <= s0
        gap = abs(datetime.now(timezone.utc) - s0) * 0.1
        return t0 < s1 + gap and t1 > s0 - gap

    return test


def _reference_key(value: str, target: str | None) -> str:
    """A search value as ``Type/id`` (or ``*/id`` when the type is open)."""
    parts = [p for p in value.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] in R4_RESOURCE_TYPES:
        return f"{parts[-2]}/{parts[-1]}"
    if len(parts) == 1:
        return f"{target or '*'}/{parts[0]}"
    raise FhirError(400, "invalid", f"Invalid reference value '{value}'")


def _reference_matches(element: Any, keys: list[str], target: str | None) -> bool:
    if not isinstance(element, dict) or not isinstance(element.get("reference"), str):
        return False
    parts = [p for p in element["reference"].split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2:
        return False
    rtype, rid = parts[-2], parts[-1]
    if target is not None and rtype != target:
        return False
    return any(key == f"{rtype}/{rid}" or key == f"*/{rid}" for key in keys)


def _sorted(
    resources: list[dict[str, Any]], spec: str, known: dict[str, SearchParameter]
) -> list[dict[str, Any]]:
    result = list(resources)
    for field in reversed([f for f in spec.split(",") if f]):
        descending = field.startswith("-")
        name = field.lstrip("-")
        param = known.get(name)
        if param is None:
            raise FhirError(400, "not-supported", f"Cannot sort on unknown search parameter '{name}'")

        def key(resource: dict[str, Any], param: SearchParameter = param) -> tuple[int, str]:
            sort_value = _sort_value(resource, param)
            return (0, sort_value) if sort_value is not None else (1, "")

        present = [r for r in result if key(r)[0] == 0]
        missing = [r for r in result if key(r)[0] == 1]
        present.sort(key=key, reverse=descending)
        result = present + missing
    return result


def _sort_value(resource: dict[str, Any], param: SearchParameter) -> str | None:
    for element in _values(resource, param):
        if param.kind == "date":
            rng = _target_range(element)
            if rng is not None:
                return rng[0].isoformat()
        elif param.kind == "reference" and isinstance(element, dict):
            ref = element.get("reference")
            if isinstance(ref, str):
                return ref
        elif isinstance(element, dict):
            codes = [c.get("code") for c in element.get("coding") or [] if isinstance(c, dict)]
            code = codes[0] if codes else element.get("code", element.get("value"))
            if code is not None:
                return str(code)
        elif isinstance(element, (str, int, bool)):
            return str(element).casefold() if param.kind == "string" else str(element)
    return None
