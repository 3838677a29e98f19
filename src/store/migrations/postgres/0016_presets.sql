-- Each tenant's own job presets (issue #20). `body` is the JSON of presets::Preset; the name is
-- unique per tenant (the config file's presets are not stored).
CREATE TABLE presets (
    tenant  TEXT NOT NULL,
    name    TEXT NOT NULL,
    body    TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
