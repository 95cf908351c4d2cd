import type { GastownUserDO } from './dos/GastownUser.do';
import type { GastownOrgDO } from './dos/GastownOrg.do';
import type { OrgMembership } from './util/jwt.util';

// Types are erased by esbuild (wrangler bundles without type-checking); they document the shapes.
export type Env = {
  NEXTAUTH_SECRET: string;
  GASTOWN_USER: DurableObjectNamespace<GastownUserDO>;
  GASTOWN_ORG: DurableObjectNamespace<GastownOrgDO>;
};

export type GastownEnv = {
  Bindings: Env;
  Variables: {
    kiloUserId: string;
    orgMemberships: OrgMembership[];
    orgId: string;
    orgRole: OrgMembership['role'];
  };
};
