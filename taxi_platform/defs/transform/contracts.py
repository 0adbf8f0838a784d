"""Dagster's view of the data contracts in :mod:`taxi_platform.transform.contracts`: the column schema with its
constraints (``dagster/column_schema``) and the blocking check each contracted asset runs on what it wrote.

A blocking check that fails stops the assets downstream of that partition in the same run (and automation waits
for a passing one), so a month that breaks its contract never reaches ``trip_features`` or ``fare_model``.
"""

import dagster as dg

from taxi_platform.transform.contracts import Contract, ContractReport

CHECK_SUFFIX = "_contract"


def table_schema(contract: Contract) -> dg.TableSchema:
    """The contract as Dagster's column schema: types, nullability and the other constraints in words."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type,
                description=c.description,
                constraints=dg.TableColumnConstraints(nullable=c.nullable, other=c.rules()),
            )
            for c in contract.columns
        ],
        constraints=dg.TableConstraints(other=[r.description for r in contract.row_rules]),
    )


def definition_metadata(contract: Contract) -> dict:
    """Metadata for the asset definition: the schema and the contract's version."""
    return {
        "dagster/column_schema": table_schema(contract),
        "contract_version": dg.MetadataValue.text(contract.tag),
    }


def check_spec(asset: dg.AssetKey, contract: Contract) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        f"{contract.table}{CHECK_SUFFIX}",
        asset=asset,
        blocking=True,
        description=f"The partition satisfies the {contract.tag} contract: every declared column with its type, "
        "NULLs only where allowed, values within their ranges and sets, and the row rules (blocking: a violation "
        "stops the downstream assets).",
    )


def check_result(contract: Contract, report: ContractReport) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=f"{contract.table}{CHECK_SUFFIX}",
        passed=report.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.summary(),
        metadata={
            "contract_version": dg.MetadataValue.text(contract.tag),
            "contract_digest": dg.MetadataValue.text(contract.digest()),
            "rows": dg.MetadataValue.int(report.rows),
            "violations": dg.MetadataValue.json(report.violations),
        },
    )
