"""What a training job costs at list price, from AWS's Price List API, before it is submitted.

`GetProducts` of service `AmazonSageMaker`, one product per instance type, region and use:
an "ML Instance" whose `platoinstancetype` is `Training` (the attribute names the Price List
files use, as read by vantage-sh/ec2instances.info's SageMaker scraper and AWS's own
samples), its on-demand price per hour in USD. The API answers from us-east-1 for every
region, needs credentials allowed `pricing:GetProducts`, and costs nothing. enet keeps no
price table of its own: a price it cannot look up is "not estimated", never guessed.

Managed spot training bills at most the on-demand price (what a spot job saves varies and is
not in the Price List API), so the on-demand price is also the spot job's ceiling.
"""

import json
from typing import NamedTuple, Optional, Union

PRICE_LIST_REGION = "us-east-1"  # the Price List API's endpoint for every region's prices
SERVICE_CODE = "AmazonSageMaker"
# A real submission whose worst case at list price is above this asks first (--yes: don't).
CONFIRM_ABOVE_USD = 50.0
PRICING_PAGE = "https://aws.amazon.com/sagemaker/pricing/"


class HourlyPrice(NamedTuple):
    usd: float  # one instance, one hour, on demand
    published: str  # the price list's publication date


class JobCost(NamedTuple):
    """A job's price at list price: per hour for all its instances, and for --max-run."""

    price: HourlyPrice
    instance_type: str
    instance_count: int
    max_run_seconds: int
    jobs: int = 1  # a tuning job's training jobs in all

    @property
    def per_hour(self) -> float:
        return self.price.usd * self.instance_count

    @property
    def worst_case(self) -> float:
        return self.per_hour * self.max_run_seconds / 3600 * self.jobs

    def describe(self, spot: bool) -> str:
        hours = self.max_run_seconds / 3600
        billed = "spot bills at most this" if spot else "on demand"
        each = f"{self.jobs} jobs x " if self.jobs > 1 else ""
        return (
            f"${self.per_hour:,.2f}/h for {self.instance_count} x {self.instance_type} at "
            f"${self.price.usd:,.2f}/h ({billed}); worst case ${self.worst_case:,.2f} for "
            f"{each}--max-run {hours:g} h (AWS Price List API, published "
            f"{self.price.published})"
        )


def _filters(instance_type: str, region: str):
    match = {
        "productFamily": "ML Instance",
        "regionCode": region,
        "instanceName": instance_type,
        "platoinstancetype": "Training",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in match.items()]


def on_demand_price(answer: dict) -> Optional[HourlyPrice]:
    """The hourly USD price in a GetProducts answer (its first product), or None."""
    for item in answer.get("PriceList", []):
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if usd is not None and dimension.get("unit", "Hrs").lower().startswith("hr"):
                    published = str(product.get("publicationDate", "unknown"))[:10]
                    return HourlyPrice(float(usd), published)
    return None


def training_price(boto_session, instance_type: str, region: str) -> Union[HourlyPrice, str]:
    """The on-demand price of one `instance_type` training instance in `region`, or why
    there is none (a short reason for the plan's line)."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10)
    try:
        client = boto_session.client("pricing", region_name=PRICE_LIST_REGION, config=config)
        answer = client.get_products(
            ServiceCode=SERVICE_CODE, Filters=_filters(instance_type, region), MaxResults=10
        )
    except ClientError as err:
        return f"the Price List API refused ({err.response.get('Error', {}).get('Code', err)})"
    except BotoCoreError as err:
        return f"the Price List API could not be reached ({type(err).__name__})"
    price = on_demand_price(answer)
    return price if price is not None else f"no list price for {instance_type} in {region}"
